"""TFX's Pusher executor, made idempotent: a blessed model that is already the newest version in
the serving directory is not copied again as yet another version.

Why: with LatestBlessedModelStrategy as the Evaluator's baseline, the run after a model's first
blessing re-evaluates that same (cached) model against itself, blesses it again, and TFX's Pusher
would copy it to SERVING_ROOT/<model>/<new timestamp>/: a duplicate version that TF Serving loads
and switches to for nothing. Here, when the newest version there has the same SavedModel
fingerprint (fingerprint.pb: checksums of the graph, signatures, object graph and variables),
the push is recorded in MLMD as TFX's Pusher records it (pushed 1, pushed_destination and
pushed_version of the existing version, the model archived in the PushedModel artifact) with
`reused_version` 1, and nothing is written to the serving directory. Every other case, blessed
or not, is TFX's Pusher unchanged.
"""
from __future__ import annotations

import logging
import os

from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from pipeline import saved_model_layout as layout

log = logging.getLogger(__name__)
FINGERPRINT = "fingerprint.pb"
REUSED = "reused_version"


def newest_version(base_directory: str) -> str | None:
    """The highest numeric version folder under a TF Serving model directory."""
    newest = layout.newest_version(fileio.listdir(base_directory)) if fileio.isdir(base_directory) else None
    return os.path.join(base_directory, newest) if newest else None


def same_saved_model(a: str, b: str) -> bool:
    """Both SavedModels carry a fingerprint and the fingerprints are equal."""
    fa, fb = os.path.join(a, FINGERPRINT), os.path.join(b, FINGERPRINT)
    if not (fileio.exists(fa) and fileio.exists(fb)):
        return False
    with fileio.open(fa, "rb") as x, fileio.open(fb, "rb") as y:
        return x.read() == y.read()


class Executor(tfx_pusher.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") == "filesystem" and self.CheckBlessing(input_dict):
            model_path = self.GetModelPath(input_dict)
            serving = newest_version(destination.filesystem.base_directory)
            if serving is not None and same_saved_model(model_path, serving):
                model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
                io_utils.copy_dir(model_path, model_push.uri)
                self._MarkPushed(model_push, pushed_destination=serving, pushed_version=os.path.basename(serving))
                model_push.set_int_custom_property(REUSED, 1)
                log.info("the blessed model is already served as %s; nothing copied", serving)
                return
        super().Do(input_dict, output_dict, exec_properties)
