"""The Audio ExampleGen's driver: fingerprints the data folder before TFX looks up its cache.

Why: a component without input artifacts is cached on its parameters alone, so with an unchanged
`data_dir` string a rerun would reuse yesterday's Examples even after clips were added, removed
or edited. TFX's launcher runs a component's custom driver before the cache lookup and folds the
exec properties the driver returns into the cache key (tfx/orchestration/portable/launcher.py),
which is how TFX's own FileBasedExampleGen notices new files. This driver does the same: it adds
`input_fingerprint` (inputs.fingerprint: the CSV's and label file's bytes, and each audio
file's name, size and modification time, or with `fingerprint: CONTENT` a checksum of its bytes),
so changed data means a cache miss and a new run, and unchanged data a hit. The fingerprint is
also written on the output Examples artifact.

Kubeflow V2 / Vertex do not run custom drivers: there `fatp-kubeflow` compiles the ExampleGen with
caching off (pipeline/orchestration/kubeflow.py).
"""
from __future__ import annotations

import copy
import logging

from tfx.dsl.components.base import base_driver
from tfx.orchestration import data_types_utils
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.orchestration.portable import data_types as portable_data_types
from tfx.proto.orchestration import driver_output_pb2

from components.audio_example_gen import inputs
from pipeline import config as config_lib

log = logging.getLogger(__name__)
EXAMPLES = "examples"


class Driver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
    """Adds `input_fingerprint` to the exec properties and the output artifact."""

    def __init__(self, metadata_handle):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        ir_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info: portable_data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
        props = dict(execution_info.exec_properties)
        cfg = config_lib.example_gen_config(props.get(inputs.CONFIG, ""))
        props[inputs.FINGERPRINT] = inputs.fingerprint(inputs.resolve(props[inputs.DATA_DIR], cfg), cfg.fingerprint)
        log.info("input fingerprint of %s: %s", props[inputs.DATA_DIR], props[inputs.FINGERPRINT])
        result = driver_output_pb2.DriverOutput()
        for key, value in props.items():
            if value is not None:
                data_types_utils.set_metadata_value(result.exec_properties[key], value)
        examples = copy.deepcopy(execution_info.output_dict[EXAMPLES][0].mlmd_artifact)
        examples.custom_properties[inputs.FINGERPRINT].string_value = props[inputs.FINGERPRINT]
        result.output_artifacts[EXAMPLES].artifacts.append(examples)
        return result
