"""The Audio ExampleGen's executor: runs pipeline.beam.feature_job.build in the component's Beam pipeline and
turns its manifest into a standard TFX `Examples` artifact.

    EXAMPLES_URI/Split-train/data-*.tfrecord.gz   only TFRecord files (tfx-bsl picks GZIP by the
    EXAMPLES_URI/Split-eval/data-*.tfrecord.gz    .gz suffix; the Trainer globs Split-x/*)
    EXAMPLES_URI/manifest.json, labels.txt, dead_letters.jsonl   beside the splits, never inside
    (config mode TEST: one split, EXAMPLES_URI/Split-test/, of the unlabelled clips, for BulkInferrer)

The artifact carries what ExampleGen sets (split_names, payload_format FORMAT_TF_EXAMPLE,
file_format tfrecords_gzip, input_fingerprint) and the job's counts (input_rows, written,
dead_letters, failed_by_reason, and per_source: {source: input_rows, written, failed, per_split}
as JSON, with `sources` naming them), so a run's bad clips, and what each source gave, are visible
in MLMD. A run whose
dead letters exceed max_error_ratio, or that leaves a split empty, raises: the component fails
and nothing downstream runs. TFX deletes a failed execution's output folders, so the manifest and
dead letters are first copied to PIPELINE_ROOT/AudioExampleGen/failed/<execution id>/, which the
error message names.
"""
from __future__ import annotations

import json
import logging
import os

from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.audio_example_gen import inputs
from pipeline import config as config_lib
from pipeline import fileio
from pipeline.beam import feature_job as job
from pipeline.data import job_output as output

log = logging.getLogger(__name__)

EXAMPLES = "examples"
SPLIT_PREFIX = "Split-"          # TFX's split folder naming (artifact_utils.get_split_uri)
SPLITS = ("train", "eval")
TEST_SPLITS = ("test",)         # mode TEST: unlabelled clips (sample_submission.csv, test/) for BulkInferrer
FILE_FORMAT = "tfrecords_gzip"


class ExampleGenError(RuntimeError):
    """The feature job finished but its output must not be used (see the manifest)."""


def _deflate(cfg: config_lib.AudioExampleGenConfig) -> str:
    return config_lib.AudioExampleGenConfig.Deflate.Name(cfg.deflate).lower()   # FAST -> "fast"


def _keep_report(uri: str) -> str:
    """Copy the manifest and dead letters of a failed run out of the artifact folder, which TFX
    removes on failure: COMPONENT_DIR/failed/<execution id>/ (the artifact is COMPONENT_DIR/examples/<id>)."""
    from apache_beam.io.filesystems import FileSystems

    uri = uri.rstrip("/")
    kept = FileSystems.join(os.path.dirname(os.path.dirname(uri)), "failed", os.path.basename(uri))
    if not FileSystems.exists(kept):
        FileSystems.mkdirs(kept)
    for name in (output.MANIFEST, output.DEAD_LETTERS, output.LABELS):
        src = FileSystems.join(uri, name)
        if FileSystems.exists(src):
            FileSystems.copy([src], [FileSystems.join(kept, name)])
    return kept


def split_by(manifest: dict) -> str:
    """How the clips were split, in words, with the groups each split holds ("" for a test split)."""
    how = manifest.get("split_by")
    if not isinstance(how, dict):
        return "by file name"
    splits = manifest.get("splits", {})
    held = ", ".join(f"{s['groups']} in {name}" for name, s in sorted(splits.items()) if "groups" in s)
    shared = max((s.get("shared_groups", 0) for s in splits.values()), default=0)
    ungrouped = sum(s.get("ungrouped", 0) for s in splits.values())
    if "group_regex" in how:
        key = f"regex {how['group_regex']}"
    else:
        key = f"column {how['group_column']} of " + (how.get("group_csv") or "the training CSV")
    return (f"by group ({key}): groups {held}; {shared} in more than one split"
            + (f"; {ungrouped} clips matched no group (each its own)" if ungrouped else ""))


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        cfg = config_lib.example_gen_config(exec_properties.get(inputs.CONFIG, ""))
        data_dir = exec_properties[inputs.DATA_DIR]
        paths = inputs.resolve(data_dir, cfg)
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES])
        test = cfg.mode == config_lib.AudioExampleGenConfig.TEST
        splits = TEST_SPLITS if test else SPLITS
        spec = job.make_spec(output_dir=examples.uri, cfg=cfg.features, csv=paths.csv, audio_dir=paths.audio_dir,
                             mode="test" if test else "train",
                             labels=paths.labels, noisy=paths.noisy_csv is not None, noisy_csv=paths.noisy_csv,
                             noisy_audio_dir=paths.noisy_audio_dir, eval_ratio=cfg.eval_ratio,
                             group_regex="" if test else cfg.group_regex,
                             group_column="" if test else cfg.group_column,
                             group_csv="" if test else paths.group_csv or "",
                             max_error_ratio=cfg.max_error_ratio,
                             batch_size=cfg.batch_size, compression=_deflate(cfg), split_prefix=SPLIT_PREFIX,
                             inputs={"data_dir": data_dir,
                                     inputs.FINGERPRINT: exec_properties.get(inputs.FINGERPRINT, "")})
        # the artifact's folder belongs to this execution alone: leftovers are an earlier attempt's
        job.start(spec, overwrite=True)
        with self._make_beam_pipeline() as p:
            job.build(p, spec)
        manifest = output.read_manifest(examples.uri)
        if manifest is None:
            raise ExampleGenError(f"the feature job finished without writing {fileio.join(examples.uri, output.MANIFEST)}")
        counts = manifest["counts"]
        log.info("Audio ExampleGen: %d rows -> %d examples %s, %d dead letters %s; per source %s", counts["input_rows"],
                 counts["written"], counts["per_split"], counts["failed"], counts["failed_by_reason"],
                 counts["per_source"])
        if manifest["status"] != output.STATUS_COMPLETE:
            raise ExampleGenError(f"the feature job failed: {manifest['status_reason']} (dead letters by reason: "
                                  f"{counts['failed_by_reason']}); report kept in {_keep_report(examples.uri)}")
        empty = [s for s in splits if not counts["per_split"].get(s)]
        if empty:
            why = ("no test clip could be read" if test else
                   f"eval_ratio {cfg.eval_ratio}; the Trainer and Evaluator need both train and eval")
            raise ExampleGenError(f"split(s) {empty} got no examples ({counts['written']} written, {why}); "
                                  f"report kept in {_keep_report(examples.uri)}")
        examples.split_names = artifact_utils.encode_split_names(list(splits))
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, FILE_FORMAT)
        for key, value in (("input_rows", counts["input_rows"]), ("written", counts["written"]),
                           ("dead_letters", counts["failed"])):
            examples.set_int_custom_property(key, value)
        examples.set_string_custom_property("failed_by_reason", json.dumps(counts["failed_by_reason"], sort_keys=True))
        examples.set_string_custom_property("sources", ",".join(manifest["sources"]))
        examples.set_string_custom_property("per_source", json.dumps(counts["per_source"], sort_keys=True))
        examples.set_string_custom_property("data_dir", data_dir)
        if not test:
            examples.set_string_custom_property("split_by", split_by(manifest))
        if exec_properties.get(inputs.FINGERPRINT):
            examples.set_string_custom_property(inputs.FINGERPRINT, exec_properties[inputs.FINGERPRINT])
