"""Run fatp-pipeline and SIGKILL it at one named moment (issue 31 §4), for the kill test and
bench/random_kills.py:

    python -m tests.killed_run MOMENT -- FATP-PIPELINE-FLAGS...

A moment names a component and a function of the code it runs (this project's, TFX's or Beam's) and
a call number: on that call, while that component runs, the process writes where it is to the file
$FATP_KILL_MARK and kills itself with SIGKILL: no handler, no cleanup, nothing flushed, as the
kernel's OOM killer or a lost machine would. The pipeline code is not changed; the functions are
wrapped from outside, as a debugger sets a breakpoint, so the kill lands exactly where it is named (a
timer hits a short step such as a rename only by luck). "before" kills as the call starts, "after"
once it returned.
"""
from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from dataclasses import dataclass

MARK_ENV = "FATP_KILL_MARK"
PUBLISH = "tfx.orchestration.portable.launcher:Launcher._publish_successful_execution"
RENAME = "apache_beam.io.filesystems:FileSystems.rename"


@dataclass(frozen=True)
class Moment:
    component: str
    target: str          # "module:attribute[.attribute]"
    call: int = 1        # the call (1-based, counted while `component` runs) that is killed
    when: str = "before"


# in the order LocalDagRunner runs the components, so that one pipeline root can be killed at each in turn and rerun
MOMENTS = {
    "example_gen.decoding": Moment("AudioExampleGen", "pipeline.beam.transforms:_DecodeAudio.process", 12),
    "example_gen.shard_renames": Moment("AudioExampleGen", RENAME, 1, "after"),   # one shard renamed, one not
    "example_gen.manifest": Moment("AudioExampleGen", "pipeline.beam.feature_job:_write_manifest"),
    "example_gen.publish": Moment("AudioExampleGen", PUBLISH),   # Examples whole, MLMD not told
    "test_example_gen.features": Moment("TestExampleGen", "pipeline.beam.transforms:_ComputeFeatures.process"),
    "statistics_gen.publish": Moment("StatisticsGen", PUBLISH),
    "trainer.after_a_backup": Moment("Trainer", "pipeline.training.resume:TrainingBackup._save", 1, "after"),
    "trainer.export_rename": Moment("Trainer", "pipeline.fileio:publish_dir"),   # SavedModel written, not in place
    "evaluator.bootstrap": Moment("Evaluator", "pipeline.metrics.bootstrap:intervals"),
    "evaluator.publish": Moment("Evaluator", PUBLISH),          # blessing written, MLMD not told
    "bulk_inferrer.inference": Moment("BulkInferrer", "tfx_bsl.beam.run_inference:_BaseSavedModelHandler._run_inference",
                                      1, "after"),
    "pusher.copy": Moment("Pusher", "tfx.dsl.io.fileio:copy", 3, "after"),          # a version half copied
    "pusher.rename": Moment("Pusher", "pipeline.fileio:publish_dir", 1, "after"),  # served, MLMD not told
    "pusher.publish": Moment("Pusher", PUBLISH),
    "submission_writer.finish": Moment("SubmissionWriter", "pipeline.serving.submission:_finish"),
    "submission_writer.publish": Moment("SubmissionWriter", PUBLISH),
}

_running = {"component": None}


def _die(name: str, moment: Moment) -> None:
    mark = os.environ.get(MARK_ENV)
    if mark:
        with open(mark, "w") as f:
            f.write(f"{name} {_running['component']}\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _owner_and_name(target: str):
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    return owner, name


def arm(name: str) -> None:
    """Wrap the moment's function (and TFX's launcher, to know which component runs)."""
    moment = MOMENTS[name]
    from tfx.orchestration.portable import launcher

    launch = launcher.Launcher.launch

    def tracked_launch(self, *a, **kw):
        _running["component"] = self._pipeline_node.node_info.id
        try:
            return launch(self, *a, **kw)
        finally:
            _running["component"] = None

    launcher.Launcher.launch = tracked_launch
    owner, attr = _owner_and_name(moment.target)
    raw = owner.__dict__.get(attr, getattr(owner, attr))
    is_static = isinstance(raw, staticmethod)
    plain = raw.__func__ if is_static else raw
    calls = [0]

    @functools.wraps(plain)       # Beam reads a DoFn.process's signature
    def wrapped(*a, **kw):
        if _running["component"] == moment.component:
            calls[0] += 1
            if calls[0] == moment.call and moment.when == "before":
                _die(name, moment)
        result = plain(*a, **kw)
        if _running["component"] == moment.component and calls[0] == moment.call and moment.when == "after":
            _die(name, moment)
        return result

    setattr(owner, attr, staticmethod(wrapped) if is_static else wrapped)


# ------------------------------------------------------------------------------- after a kill

def torn_examples(pipeline_root: str) -> list[str]:
    """Examples folders whose manifest says complete but whose shards do not hold what it lists
    (a file missing, unreadable to its end, or with another record count)."""
    import glob
    import json

    import tensorflow as tf

    torn = []
    for path in sorted(glob.glob(os.path.join(pipeline_root, "*ExampleGen", "examples", "*", "manifest.json"))):
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("status") != "complete":
            continue
        folder = os.path.dirname(path)
        for split in manifest["splits"].values():
            for shard in split["files"]:
                file = os.path.join(folder, shard["path"])
                try:
                    n = sum(1 for _ in tf.data.TFRecordDataset(file, compression_type="GZIP" if file.endswith(".gz") else ""))
                except (tf.errors.OpError, OSError) as e:
                    torn.append(f"{file}: {type(e).__name__}")
                    continue
                if n != shard["records"]:
                    torn.append(f"{file}: {n} records, the manifest says {shard['records']}")
    return torn


def unloadable_versions(model_base: str) -> list[str]:
    """The versions under a serving model folder that TF Serving would try (numeric names) and its
    loader cannot load (tests/serving_loader.py: a TF1 Session restore, as TF Serving does)."""
    from tests.serving_loader import ServedModel

    bad = []
    for name in sorted(os.listdir(model_base)) if os.path.isdir(model_base) else []:
        if not name.isdigit():
            continue             # TF Serving reads only numeric folder names as versions
        try:
            ServedModel(os.path.join(model_base, name)).close()
        except Exception as e:  # noqa: BLE001 -- any failure to load is what is counted
            bad.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    return bad


def states(pipeline_root: str, pipeline_name: str) -> dict:
    """{component: state} of the newest run in the root's ML Metadata (opening it proves it readable)."""
    from pipeline.orchestration import run_report

    store = run_report.open_store(os.path.join(pipeline_root, "metadata.sqlite"))
    run_id = run_report.latest_run_id(store, pipeline_name)
    return {r.component: r.state for r in run_report.component_runs(store, pipeline_name, run_id)} if run_id else {}


def outcome(pipeline_root: str, serving_base: str, pipeline_name: str) -> dict:
    """What a finished run delivered, to compare a killed-and-rerun root with an uninterrupted one:
    Examples counts per split, dead letters, the verdict, the versions served, the submission's rows."""
    import json

    from pipeline.orchestration import run_report

    store = run_report.open_store(os.path.join(pipeline_root, "metadata.sqlite"))
    runs = {r.component: r for r in run_report.component_runs(store, pipeline_name,
                                                                 run_report.latest_run_id(store, pipeline_name))}
    with open(os.path.join(runs["AudioExampleGen"].outputs["examples"][0].uri, "manifest.json")) as f:
        manifest = json.load(f)
    submission = runs["SubmissionWriter"].outputs["submission"][0]
    with open(run_report.prop(submission, "path")) as f:
        rows = [line.split(",", 1)[0] for line in f.read().splitlines()]
    return {"splits": {k: v["records"] for k, v in manifest["splits"].items()},
            "dead_letters": manifest["counts"]["failed"],
            "blessed": run_report.prop(runs["Evaluator"].outputs["blessing"][0], "blessed"),
            "pushed": run_report.prop(runs["Pusher"].outputs["pushed_model"][0], "pushed"),
            "versions": len([v for v in os.listdir(serving_base) if v.isdigit()]),
            "submission_rows": rows}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] != "--" or argv[0] not in MOMENTS:
        sys.exit(f"usage: python -m tests.killed_run MOMENT -- FLAGS...; moments: {', '.join(MOMENTS)}")
    from pipeline import logs

    logs.filter_native_stderr(argv[2:])       # as the fatp-pipeline console script does
    logs.quiet_tensorflow()
    arm(argv[0])
    from pipeline.orchestration import run_local

    sys.exit(run_local.run(argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
