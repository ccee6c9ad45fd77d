"""TFX's Pusher executor for a filesystem destination, made idempotent and safe to kill.

Reuse: with LatestBlessedModelStrategy as the Evaluator's baseline, the run after a model's first
blessing re-evaluates that same (cached) model against itself and blesses it again; TFX's Pusher
would copy it to SERVING_ROOT/<model>/<new timestamp>/, a duplicate version that TF Serving loads
and switches to for nothing. Here, when the newest version is a COMPLETE copy of the model, the
push is recorded in MLMD as TFX's Pusher records it (pushed 1, pushed_destination and
pushed_version of that version, the model archived in the PushedModel artifact) with
`reused_version` 1, and nothing is written to the serving directory.

Complete means: the version holds exactly the model's files (the same relative paths, so
saved_model.pb among them) with the same bytes. An equal fingerprint.pb is not enough: a push
killed mid-copy left fingerprint.pb (copied with the other top-level files) without
saved_model.pb (copied last), or a variables file cut short; TF Serving fails on such a version,
and the next push must replace it rather than record it. A newest version that is not a
complete copy of this model is left as it is (it may be another model, or a person's) and a new
version is pushed above it.

Push: version = max(newest version + 1, the clock's second) (saved_model_layout.next_version):
two pushes within one second, or a clock behind the newest version, would otherwise collide
(TFX's Pusher then copied nothing and recorded a push pointing at the other model) or write a
version TF Serving never switches to. On a local disk the model is copied into a folder of its
own beside the versions (.tmp-push-<version>-<pid>-<random>, which TF Serving ignores), fsynced,
and renamed into place (pipeline.fileio.publish_dir), so the version appears whole or not at all;
a version that appears meanwhile (a concurrent push) fails the push with a clear error and is
not replaced. Other writers' temporary folders are left alone (one may be a push in progress on
another machine) and named in a warning, for a person to clear those of killed pushes. Object
stores have no rename: there the files are copied in place, saved_model.pb last (as TFX's Pusher
does), and the completeness check above keeps a torn copy from being reused.

Blessed but not the best on the same clips (the Evaluator's best_model_id names the baseline):
not pushed, with the reason recorded (`reason`); the served model stays.

Not blessed, or another destination: TFX's Pusher unchanged.
"""
from __future__ import annotations

import logging
import os
import time

from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from pipeline import fileio as pipeline_fileio
from pipeline import saved_model_layout as layout

log = logging.getLogger(__name__)
FINGERPRINT = "fingerprint.pb"
SAVED_MODEL = "saved_model.pb"
REUSED = "reused_version"
REASON = "reason"          # why a blessed model was not pushed
_CHUNK = 1 << 20


def newest_version(base_directory: str) -> str | None:
    """The highest numeric version folder under a TF Serving model directory."""
    newest = layout.newest_version(fileio.listdir(base_directory)) if fileio.isdir(base_directory) else None
    return os.path.join(base_directory, newest) if newest else None


def _files(root: str) -> list[str]:
    """Every file under `root`, as paths relative to it."""
    root = root.rstrip("/")
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in fileio.walk(root) for name in names)


def _same_bytes(a: str, b: str) -> bool:
    if fileio.stat(a).length != fileio.stat(b).length:
        return False
    with fileio.open(a, "rb") as x, fileio.open(b, "rb") as y:
        while True:
            chunk = x.read(_CHUNK)
            if chunk != y.read(_CHUNK):
                return False
            if not chunk:
                return True


def is_complete_copy(model_path: str, version_path: str) -> bool:
    """`version_path` holds exactly the files of the SavedModel at `model_path`, byte for byte."""
    files = _files(model_path)
    return (SAVED_MODEL in files and _files(version_path) == files
            and all(_same_bytes(os.path.join(model_path, f), os.path.join(version_path, f)) for f in files))


def same_fingerprint(a: str, b: str) -> bool:
    """Both SavedModels carry a fingerprint and the fingerprints are equal."""
    fa, fb = os.path.join(a, FINGERPRINT), os.path.join(b, FINGERPRINT)
    return fileio.exists(fa) and fileio.exists(fb) and _same_bytes(fa, fb)


def _copy_tree(src: str, dst: str) -> None:
    """Copy every file of `src` into the new folder `dst`, saved_model.pb last (TF Serving and
    TensorFlow take its presence as the sign of a whole SavedModel)."""
    files = _files(src)
    for rel in sorted(files, key=lambda f: f == SAVED_MODEL):
        fileio.makedirs(os.path.dirname(os.path.join(dst, rel)))
        fileio.copy(os.path.join(src, rel), os.path.join(dst, rel))


def push_new_version(model_path: str, base_directory: str) -> str:
    """Copy the model to BASE/<version>/ (version: saved_model_layout.next_version); returns its path."""
    fileio.makedirs(base_directory)
    version = str(layout.next_version(fileio.listdir(base_directory), time.time()))
    final = os.path.join(base_directory, version)
    if not pipeline_fileio.is_local(base_directory):
        if fileio.exists(final):
            raise FileExistsError(f"cannot push to {final}: it appeared while this push chose it (another push at "
                                  f"the same time?); nothing was replaced, run the Pusher again")
        _copy_tree(model_path, final)
        return final
    tmp = os.path.join(base_directory, layout.temp_name(version, "push"))
    others = layout.temp_folders(fileio.listdir(base_directory))
    if others:      # never removed here: one may be a push in progress on another machine
        log.warning("%d temporary folder(s) beside the versions in %s, of pushes or exports in progress or killed: "
                    "%s; TF Serving ignores them; remove those of no running push", len(others), base_directory,
                    ", ".join(others))
    try:
        _copy_tree(model_path, tmp)
        try:
            pipeline_fileio.publish_dir(tmp, final)
        except OSError:
            if os.path.exists(final):
                raise FileExistsError(f"cannot push to {final}: it appeared while this push copied the model (another "
                                      f"push at the same time?); nothing was replaced, run the Pusher again") from None
            raise
    finally:
        if fileio.exists(tmp):          # only this push's own folder, whatever happened
            fileio.rmtree(tmp)
    return final


def not_the_best(input_dict) -> str:
    """'' when the model is the best the Evaluator saw on the same clips (or no best was recorded:
    blessings from before best_model_id); else why it is not pushed. The Evaluator blesses a
    candidate within the tolerance of the baseline; serving it would replace a model that scored
    higher, so only the best is served."""
    from components.evaluator import executor as evaluator

    blessing = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_BLESSING_KEY])
    model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
    if not blessing.has_custom_property(evaluator.BEST_ID):
        return ""
    best = blessing.get_int_custom_property(evaluator.BEST_ID)
    if best == model.id:
        return ""
    note = blessing.get_string_custom_property(evaluator.NOT_BEST) if blessing.has_custom_property(
        evaluator.NOT_BEST) else f"model {best} scored higher on the same clips"
    return f"blessed, not pushed: {note}"


class Executor(tfx_pusher.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem" or not self.CheckBlessing(input_dict):
            super().Do(input_dict, output_dict, exec_properties)
            return
        fs = destination.filesystem
        if fs.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {fs.versioning}")
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        why = not_the_best(input_dict)
        if why:
            log.info("%s", why)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(REASON, why)
            return
        model_path = self.GetModelPath(input_dict)
        newest = newest_version(fs.base_directory)
        reused = newest is not None and is_complete_copy(model_path, newest)
        if reused:
            serving = newest
            log.info("the blessed model is already served as %s; nothing copied", serving)
        else:
            if newest is not None and same_fingerprint(model_path, newest):
                log.warning("%s has this model's fingerprint but is not a whole copy of it (a push killed mid-copy?): "
                            "TF Serving may fail to load it; pushing a new version above it", newest)
            serving = push_new_version(model_path, fs.base_directory)
            log.info("model written to serving path %s", serving)
        io_utils.copy_dir(model_path, model_push.uri)          # archived in the PushedModel, as TFX does
        self._MarkPushed(model_push, pushed_destination=serving, pushed_version=os.path.basename(serving))
        if reused:
            model_push.set_int_custom_property(REUSED, 1)
