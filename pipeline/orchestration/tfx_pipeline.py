"""The TFX pipeline: one `create_pipeline()` for local runs (pipeline.orchestration.run_local) and Kubeflow V2.

    AudioExampleGen (components/audio_example_gen: the Beam feature job -> Examples)
      -> StatisticsGen -> SchemaGen -> ExampleValidator     (scalar and label features only)
      -> Trainer (run_fn = pipeline.training.train.run_fn, by import path: no module file, no wheel at run time)
      -> Resolver: the baseline = the best blessed model (pipeline/orchestration/baseline.py), or with
         BlessingConfig LATEST the latest (TFX's LatestBlessedModelStrategy, which Kubeflow V2 needs)
      -> Evaluator (components/evaluator: TFX's, with TFMA's lwlrap, pipeline.metrics.lwlrap_tfma): a
         baseline with other labels is none; blesses on the BlessingConfig's bar and gate
      -> Pusher (only a blessed model that is the best on the same clips, and not one already served
         whole; components/serving_pusher)
         -> SERVING_ROOT/<model_name>/<version>/   (copied aside and renamed in; version above the newest)
    when DATA holds test/ and sample_submission.csv:
    TestExampleGen (the same component, mode TEST) -> BulkInferrer (the Model, only if blessed; TFX's,
      sending at most the model's ServingConfig.max_batch examples a call: components/bulk_inferrer)
      -> SubmissionWriter (components/submission_writer: PIPELINE_ROOT/SubmissionWriter/submission/<id>/submission.csv)

Every argument is explicit (no module-level settings), as in TFX's templates, so tests, the local
runner and a Kubeflow compile build the same graph from their own values.
"""
from __future__ import annotations

import os

from pipeline import config as config_lib
from pipeline import saved_model_layout as layout
from pipeline import versions
from pipeline.beam import runners
from pipeline.data import example_schema as examples_lib

PIPELINE_NAME = "fat-audio-tagging"
RUN_FN = "pipeline.training.train.run_fn"
# What StatisticsGen describes: the scalar and label features. The mel (81,408 floats a clip with
# the seed's features) would cost most of the statistics' time and say little a schema can check.
STATS_FEATURES = (examples_lib.LABELS, examples_lib.MEL_SHAPE, examples_lib.SOURCE_SECONDS, examples_lib.SOURCE)
COMPONENT_IDS = ("AudioExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Trainer",
                 "latest_blessed_model_resolver", "Evaluator", "Pusher", "TestExampleGen", "BulkInferrer",
                 "SubmissionWriter")
SAMPLE_SUBMISSION, TEST_AUDIO = "sample_submission.csv", "test"

# Beam 2.77's local runner with two worker threads (multi_threading) loses elements of a GroupByKey
# fed from a TFRecord read of large elements now and then: 3 of 8 runs of read -> GroupByKey ->
# count on 840 Examples of ~280 KB came back 816-828, and WriteToTFRecord(num_shards=1), a
# GroupByKey inside, dropped 9 and 18 records in 2 of 14 runs; in_memory with one worker and
# multi_processing lost none in 8 of 8 each (bench/beam_gbk_loss.py, BUILD_NOTES.md). The TFX
# components whose outputs no count of ours reconciles (StatisticsGen, the Evaluator, BulkInferrer,
# the SubmissionWriter) therefore run their Beam job on one in-memory worker; their work is TensorFlow's,
# which uses every core from one worker. The feature job keeps its threads: its counts reconcile
# (written + failed = rows, or the job fails), so a loss there cannot pass unseen.
ONE_WORKER = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
ONE_WORKER_COMPONENTS = ("StatisticsGen", "Evaluator", "BulkInferrer", "SubmissionWriter")


def safe_component_flags(beam_args: list[str]) -> list[str]:
    """Flags a TFX Beam component adds to the pipeline's for a local runner (ONE_WORKER), nothing
    for other runners."""
    return list(ONE_WORKER) if runners.is_local(beam_args) else []


def has_test_data(data_dir: str) -> bool:
    """Whether the data folder holds a Kaggle test set (test/ and sample_submission.csv); False
    where it cannot be checked from here (an object store without credentials)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        return all(FileSystems.exists(os.path.join(data_dir, p)) for p in (TEST_AUDIO, SAMPLE_SUBMISSION))
    except Exception:  # noqa: BLE001 -- Beam wraps every filesystem error
        return False


def _test_components(data_dir, example_gen_config, trainer, evaluator, baseline) -> list:
    """TestExampleGen -> BulkInferrer (blessed models only, serving_default; the served one: the
    baseline where it scored higher) -> SubmissionWriter."""
    from tfx import v1 as tfx

    from components.audio_example_gen import AudioExampleGen
    from components.bulk_inferrer import BulkInferrer
    from components.submission_writer import SubmissionWriter

    cfg = type(example_gen_config)()
    cfg.CopyFrom(example_gen_config)
    cfg.mode, cfg.csv, cfg.audio_dir = cfg.TEST, SAMPLE_SUBMISSION, TEST_AUDIO
    for name in ("group_regex", "group_column", "group_csv"):
        cfg.ClearField(name)                 # one test split: nothing to split by group
    test_gen = AudioExampleGen(data_dir=data_dir, config=cfg).with_id("TestExampleGen")
    inferrer = BulkInferrer(   # TFX's, at most the model's max_batch examples a call
        examples=test_gen.outputs["examples"], model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"], baseline_model=baseline.outputs["model"],
        data_spec=tfx.proto.DataSpec(example_splits=["test"]),
        model_spec=tfx.proto.ModelSpec(model_signature_name=[layout.SERVING_DEFAULT]))
    writer = SubmissionWriter(inference_result=inferrer.outputs["inference_result"],
                              model_blessing=evaluator.outputs["blessing"],
                              sample_submission=os.path.join(data_dir, SAMPLE_SUBMISSION))
    return [test_gen, inferrer, writer]


def create_pipeline(*, pipeline_name: str, pipeline_root: str, data_dir: str, serving_root: str,
                    model_name: str = layout.MODEL_NAME,
                    example_gen_config=None,
                    trainer_preset: str = "default", trainer_overrides: str = "",
                    serving_config: str = "",
                    blessing: config_lib.BlessingConfig | None = None,
                    metadata_connection_config=None,
                    beam_pipeline_args: list[str] | None = None,
                    enable_cache: bool = True,
                    test_data: bool | None = None):
    """The pipeline as a `tfx.dsl.Pipeline`.

    Args:
      pipeline_root: where every component writes its artifacts (local path, gs://...).
      data_dir: the Kaggle layout's root (train_curated.csv, train_curated/, sample_submission.csv).
      serving_root: the Pusher writes SERVING_ROOT/<model_name>/<version>/, TF Serving's layout.
      example_gen_config: AudioExampleGenConfig (features, eval_ratio, max_error_ratio, ...).
      trainer_preset / trainer_overrides: a TrainerConfig preset and text-proto fields over it.
      serving_config: a ServingConfig text proto (the export's request limits; checked here against
        the ExampleGen's feature config).
      blessing: BlessingConfig: the bar, the baseline (BEST or LATEST) and the gate (INTERVAL or POINT).
      metadata_connection_config: ML Metadata's ConnectionConfig for local runs, SQLite or MySQL
        (pipeline.orchestration.metadata_connection; None: none, as for Kubeflow, whose orchestrator
        brings its own).
      beam_pipeline_args: flags for every Beam component; pipeline.beam.runners.runner_flags() adds the
        runner and local parallelism they leave unset, as for the feature job's command line.
      test_data: add TestExampleGen -> BulkInferrer -> SubmissionWriter (None: when has_test_data(data_dir)).
    """
    from tfx import v1 as tfx
    import tensorflow_data_validation as tfdv

    from tfx.dsl.components.base import executor_spec

    from components.audio_example_gen import AudioExampleGen
    from components.evaluator.executor import Evaluator
    from pipeline.orchestration import beam_staging
    from pipeline.orchestration.baseline import BestBlessedModelStrategy
    from components.serving_pusher import executor as serving_pusher
    from components.trainer import executor as trainer_executor
    from pipeline.training import train

    # LocalDagRunner runs the Beam executors in this process: no 52 MB copy of TFX per component on
    # a runner that ships no packages (beam_staging's docstring)
    beam_staging.install()
    # bad configs fail here, not mid-run
    trainer_cfg = config_lib.trainer_config(trainer_preset, trainer_overrides)
    config_lib.validate_serving(config_lib.serving_config(serving_config),
                                (example_gen_config or config_lib.example_gen_config()).features)
    blessing = blessing if blessing is not None else config_lib.BlessingConfig()
    example_gen = AudioExampleGen(data_dir=data_dir, config=example_gen_config)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(feature_allowlist=list(STATS_FEATURES)))
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)
    example_validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                        schema=schema_gen.outputs["schema"])
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        # TFX's executor, which also hands run_fn the Examples artifact's folder
        custom_executor_spec=executor_spec.ExecutorClassSpec(trainer_executor.Executor),
        examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        # the cache key: the resolved config (defaults written out) and the code's version, not a preset's name
        custom_config={"trainer_preset": trainer_preset, "trainer_config": trainer_overrides,
                       train.RESOLVED_CONFIG: config_lib.resolved_text(trainer_cfg),
                       train.CODE_VERSION: versions.code_version(versions.TRAINER, os.path.dirname(trainer_executor.__file__)),
                       "serving_config": config_lib.resolved_text(config_lib.serving_config(serving_config))})
    baseline = tfx.dsl.Resolver(     # (its id predates BEST; kept so that older pipeline roots' MLMD reads on)
        strategy_class=(BestBlessedModelStrategy if blessing.baseline == blessing.BEST
                        else tfx.dsl.experimental.LatestBlessedModelStrategy),
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        blessing=blessing)
    pusher = tfx.components.Pusher(
        # TFX's Pusher; its executor pushes whole versions above the newest and reuses a complete copy
        custom_executor_spec=executor_spec.ExecutorClassSpec(serving_pusher.Executor),
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(serving_root, model_name))))
    components = [example_gen, statistics_gen, schema_gen, example_validator, trainer, baseline, evaluator, pusher]
    if has_test_data(data_dir) if test_data is None else test_data:
        components += _test_components(data_dir, example_gen_config or config_lib.example_gen_config(), trainer,
                                       evaluator, baseline)
    one_worker = safe_component_flags(list(beam_pipeline_args or []))     # ONE_WORKER's comment
    for c in components:
        if c.id in ONE_WORKER_COMPONENTS and one_worker:
            c.with_beam_pipeline_args(one_worker)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=runners.runner_flags(list(beam_pipeline_args or [])))
