"""`fatp-pipeline`: run the TFX pipeline locally (LocalDagRunner, ML Metadata, caching).

    fatp-pipeline --data_dir DATA --pipeline_root out/pipeline --serving_root out/serving \\
        [--feature_preset small] [--trainer_preset default] [--epochs 30] [--min_lwlrap 0.4] \\
        [--baseline best|latest] [--gate interval|point] [--metadata mysql://USER@HOST[:PORT]/DATABASE] \\
        [Beam flags, e.g. --direct_num_workers=2]

ML Metadata is PIPELINE_ROOT/metadata.sqlite unless --metadata names another SQLite file or a
MySQL/MariaDB server a team shares (password in $FATP_METADATA_PASSWORD or
--metadata_password_file; pipeline.orchestration.metadata_connection).

Components run in order; finished ones are reused from the cache when their inputs and
parameters are unchanged (a rerun after a crash resumes where it stopped). At the end it prints
each component's outcome from ML Metadata: dead letters, anomalies, lwlrap and its interval
against the baseline, blessed or not and why, and where the model was pushed. Exit status: 0
when the run completed (blessed or not: "not blessed" is the gate working), 1 when a component
failed, 2 for bad flags.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time

from pipeline import fileio
from pipeline import config as config_lib
from pipeline import logs
from pipeline import saved_model_layout as layout

log = logging.getLogger("fatp.pipeline")


def arg_parser() -> argparse.ArgumentParser:
    from pipeline.beam import runners
    from pipeline.orchestration import metadata_connection
    from pipeline.orchestration import tfx_pipeline
    from pipeline.data import groups

    ap = argparse.ArgumentParser(prog="fatp-pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True, help="Kaggle layout root: train_curated.csv, train_curated/, "
                                                      "sample_submission.csv")
    ap.add_argument("--pipeline_root", default="out/pipeline", help="artifacts of every component, and "
                                                                    "metadata.sqlite (ML Metadata) by default")
    ap.add_argument("--serving_root", default="out/serving",
                    help="the Pusher writes SERVING_ROOT/MODEL_NAME/<version>/ for TensorFlow Serving")
    ap.add_argument("--pipeline_name", default=tfx_pipeline.PIPELINE_NAME)
    ap.add_argument("--model_name", default=layout.MODEL_NAME)
    metadata_connection.add_flags(ap)
    ap.add_argument("--feature_preset", choices=sorted(config_lib.PRESETS),
                    help="feature parameters: 'seed' = the Kaggle kernel's (636x128, the default), 'small' = fast demo")
    ap.add_argument("--feature_config", help="a FeatureConfig text proto file merged over --feature_preset")
    ap.add_argument("--example_gen_config", help="an AudioExampleGenConfig text proto file "
                                                 "(proto/example_gen_config.proto); the flags below override it")
    ap.add_argument("--eval_ratio", type=float, help="share of clips in the eval split (default 0.1)")
    groups.add_flags(ap)
    ap.add_argument("--max_error_ratio", type=float,
                    help="fail the ExampleGen (nothing downstream runs) above this share of dead letters (default 0.05)")
    noisy = ap.add_mutually_exclusive_group()
    noisy.add_argument("--noisy", dest="noisy", action="store_const", const="ON",
                       help="require DATA/train_noisy.csv (the config's noisy: ON); by default (AUTO) it is read where "
                            "it exists, its clips all in the train split, their Examples marked source 'noisy'")
    noisy.add_argument("--no_noisy", dest="noisy", action="store_const", const="OFF",
                       help="leave train_noisy.csv out (noisy: OFF): the curated clips only")
    ap.add_argument("--trainer_preset", choices=sorted(config_lib.TRAINER_PRESETS), default="default")
    ap.add_argument("--epochs", type=int, help="training epochs (overrides the preset)")
    ap.add_argument("--set", default="", help="TrainerConfig fields as text proto, e.g. 'batch_size: 32'")
    ap.add_argument("--serving_config", help="a ServingConfig text proto file (proto/serving_config.proto): the "
                                             "export's request limits max_batch, max_request_seconds, warmup_requests")
    ap.add_argument("--min_lwlrap", type=float, help="bless only above this eval lwlrap (default 0.4, proto/evaluator_config.proto)")
    ap.add_argument("--baseline_tolerance", type=float,
                    help="how much worse than the baseline a model may be (absolute lwlrap, default 0.01)")
    ap.add_argument("--baseline", choices=["best", "latest"],
                    help="compare with the best blessed model (default: quality cannot drift down run after run) "
                         "or the latest one")
    ap.add_argument("--gate", choices=["interval", "point"],
                    help="refuse when the paired bootstrap interval of candidate - baseline lies below -tolerance "
                         "(default: noise on a small eval split does not refuse), or when lwlrap < baseline - tolerance")
    ap.add_argument("--confidence", type=float, help="level of the reported intervals and of the interval gate "
                                                     "(default 0.95)")
    ap.add_argument("--no_cache", action="store_true", help="run every component even if a cached result exists")
    ap.epilog = ("Flags not listed here go to every Beam component (beam_pipeline_args), e.g. "
                 "--direct_num_workers=4, --runner=DaskRunner --dask_client_address=HOST:8786, or Dataflow "
                 "flags; what they leave unset is chosen as for the feature job "
                 f"(here: {' '.join(runners.runner_flags([]))}).")
    ap.add_argument("--log_level", default="ERROR",
                    help="logging level of TFX, Beam and TensorFlow (INFO shows every step); the report comes regardless")
    return ap


def _example_gen_config(args) -> config_lib.AudioExampleGenConfig:
    """The ExampleGen's config: --example_gen_config's file, then the flags over it."""
    cfg = config_lib.example_gen_config(fileio.read_text(args.example_gen_config) if args.example_gen_config else "")
    if args.feature_preset or args.feature_config or not cfg.HasField("features"):
        overrides = fileio.read_text(args.feature_config) if args.feature_config else ""
        cfg.features.CopyFrom(config_lib.feature_config(args.feature_preset or "seed", overrides))
    if args.eval_ratio is not None:
        cfg.eval_ratio = args.eval_ratio
    if args.max_error_ratio is not None:
        cfg.max_error_ratio = args.max_error_ratio
    for name in ("group_regex", "group_column", "group_csv"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.noisy is not None:
        cfg.noisy = config_lib.AudioExampleGenConfig.Noisy.Value(args.noisy)
    return cfg


def build(args, beam_args: list[str]):
    """(pipeline, metadata_connection.Store) from parsed flags; ValueError on a bad config,
    metadata_connection.MetadataError on a store that cannot be used (checked before anything runs)."""
    from pipeline.orchestration import metadata_connection
    from pipeline.orchestration import tfx_pipeline

    local = lambda p: p if "://" in p else os.path.abspath(p)  # noqa: E731 -- MLMD records where data came from
    blessing = config_lib.BlessingConfig()
    if args.min_lwlrap is not None:
        blessing.min_lwlrap = args.min_lwlrap
    if args.baseline_tolerance is not None:
        blessing.baseline_tolerance = args.baseline_tolerance
    if args.baseline:
        blessing.baseline = config_lib.BlessingConfig.Baseline.Value(args.baseline.upper())
    if args.gate:
        blessing.gate = config_lib.BlessingConfig.Gate.Value(args.gate.upper())
    if args.confidence is not None:
        blessing.confidence = args.confidence
    overrides = args.set + (f"\nepochs: {args.epochs}" if args.epochs else "")
    store = metadata_connection.from_args(args, os.path.join(args.pipeline_root, "metadata.sqlite"))
    metadata_connection.check(store, create_database=args.create_metadata_database)
    pipeline = tfx_pipeline.create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=local(args.pipeline_root), data_dir=local(args.data_dir),
        serving_root=local(args.serving_root), model_name=args.model_name,
        example_gen_config=_example_gen_config(args), trainer_preset=args.trainer_preset,
        trainer_overrides=overrides, blessing=blessing,
        serving_config=fileio.read_text(args.serving_config) if args.serving_config else "",
        metadata_connection_config=store.config, beam_pipeline_args=beam_args, enable_cache=not args.no_cache)
    if not store.is_mysql:
        os.makedirs(os.path.dirname(store.config.sqlite.filename_uri), exist_ok=True)
    return pipeline, store


class _AtLeast(logging.Filter):
    """absl resets its logger's level when TFX configures it; a filter stays."""

    def __init__(self, level: int):
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self._level


def _quiet(level: str) -> None:
    """TFX, Beam and TensorFlow log every step at INFO; the report at the end is what a user reads
    (the Trainer's per-epoch lines stay: they are the progress of the long step)."""
    logs.setup(logging.INFO)
    # "": records libraries log on the root logger itself (tfx-bsl's "Reading from pattern ...",
    # Beam's "Resource module is not available ..."); a filter there sees only those, not the
    # records other loggers pass up to the root's handlers
    for name in ("absl", "apache_beam", "tensorflow", "tfx", "ml_metadata", ""):
        logger = logging.getLogger(name)
        if name:
            logger.setLevel(level.upper())
        for old in [f for f in logger.filters if isinstance(f, _AtLeast)]:   # an earlier run's, in-process
            logger.removeFilter(old)
        logger.addFilter(_AtLeast(logging.getLevelName(level.upper())))


def own_run_runner(run_id: str):
    """TFX's LocalDagRunner running the pipeline under `run_id` (TFX's own choice is the same
    timestamp format, made inside run_with_ir where the caller cannot see it): the summary and
    the report then describe this process's run, not the store's latest, which is another user's
    when two runs share one store."""
    from tfx import v1 as tfx
    from tfx.dsl.compiler import constants
    from tfx.orchestration.portable import runtime_parameter_utils

    class Runner(tfx.orchestration.LocalDagRunner):
        def run_with_ir(self, pipeline, run_options=None):
            runtime_parameter_utils.substitute_runtime_parameter(
                pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
            return super().run_with_ir(pipeline, run_options)

    return Runner()


def run(argv: list[str] | None = None) -> int:
    from pipeline.orchestration import metadata_connection

    args, beam_args = arg_parser().parse_known_args(argv)
    _quiet(args.log_level)
    try:
        pipeline, metadata = build(args, beam_args)
    except (ValueError, FileNotFoundError, metadata_connection.MetadataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pipeline.orchestration import run_report
    from pipeline.orchestration import tfx_pipeline

    log.info("running pipeline %s on %s (artifacts in %s, ML Metadata %s)", args.pipeline_name, args.data_dir,
             args.pipeline_root, metadata)
    from pipeline.orchestration.progress import following

    # this process's run: another user's run on the same store may start or end meanwhile
    t0, error, run_id = time.time(), None, datetime.datetime.now().isoformat()
    metadata_connection.retry_restarted_transactions()     # another run may write the same store
    # TFX logs the deployment config, connection (and password) included, at INFO
    with metadata_connection.hidden_in_logs(metadata.config.mysql.password):
        try:
            with following([c.id for c in pipeline.components], logging.getLevelName(args.log_level.upper())):
                own_run_runner(run_id).run(pipeline)
        except Exception as e:  # noqa: BLE001 -- a failed component: report from MLMD, then exit 1
            error = e
    seconds = time.time() - t0
    failure = None if error is None else metadata_connection.masked(f"FAILED: {type(error).__name__}: {error}",
                                                                    metadata.config.mysql.password)
    try:
        store = run_report.open_store(metadata)
    except metadata_connection.MetadataError as e:   # e.g. the server went away during the run
        print(f"error: no report: {e}", file=sys.stderr)
        if failure:
            print(failure, file=sys.stderr)
        return 1
    if store.get_context_by_type_and_name("pipeline_run", run_id) is None:
        run_id = None                            # stopped before its first component registered the run
    print(f"pipeline {args.pipeline_name}, run {run_id} ({seconds:.0f} s); ML Metadata {metadata}")
    if run_id:
        print("\n".join(run_report.summary(store, args.pipeline_name, run_id, tfx_pipeline.COMPONENT_IDS)))
    if failure:
        print(failure, file=sys.stderr)
    if run_id:
        from pipeline.orchestration import report_html

        try:
            page = report_html.write(store, args.pipeline_root, args.pipeline_name, run_id)
            print(f"report: {os.path.abspath(page) if fileio.is_local(page) else page}")
        except Exception as e:  # noqa: BLE001 -- the run's outcome stands without its HTML page
            print(f"error: the HTML report could not be written: {type(e).__name__}: {e}", file=sys.stderr)
    return 1 if error is not None else 0


def main() -> None:
    logs.quiet_tensorflow()
    sys.exit(run())


if __name__ == "__main__":
    logs.filter_native_stderr(sys.argv[1:])      # as the fatp-pipeline console script does
    main()
