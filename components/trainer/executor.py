"""TFX's GenericExecutor for the Trainer, handing `run_fn` the Examples artifact's URI.

Why: TFX's FnArgs carries the split files (`train_files`: EXAMPLES/Split-train/*) but not the
artifact they belong to, and the Audio ExampleGen keeps what the trainer needs beside the splits
(manifest.json: input shape, labels, feature config). Rebuilding that folder from a file path
would tie run_fn to TFX's Split- folder naming; the artifact's own URI does not. It reaches
run_fn as `fn_args.custom_config[EXAMPLES_URI]`. Everything else is TFX's executor unchanged.
"""
from __future__ import annotations

from tfx.components.trainer import executor as tfx_trainer
from tfx.types import artifact_utils, standard_component_specs

from pipeline.training.train import EXAMPLES_URI


class Executor(tfx_trainer.GenericExecutor):
    def _GetFnArgs(self, input_dict, output_dict, exec_properties):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        fn_args.custom_config = {**(fn_args.custom_config or {}), EXAMPLES_URI: examples.uri}
        return fn_args
