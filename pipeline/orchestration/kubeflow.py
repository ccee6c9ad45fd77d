"""`fatp-kubeflow`: compile the same pipeline for Kubeflow Pipelines V2 / Vertex AI Pipelines.

    fatp-kubeflow --data_dir gs://BUCKET/fat2019 --pipeline_root gs://BUCKET/pipeline \\
        --serving_root gs://BUCKET/serving --image REGISTRY/fat-audio-pipeline:0.1.0 --output pipeline.json

`create_pipeline()` is the one the local runner uses; only the orchestrator differs. Every step
runs in the project's container image (the Dockerfile: this package and its pinned environment),
so `pipeline.training.train.run_fn` and the custom components import as they do locally. The compile is
offline: nothing is submitted (submit the JSON with the Vertex AI SDK or the KFP UI/CLI).

Caching: Kubeflow V2 does not run TFX's custom drivers, so the Audio ExampleGen's data fingerprint
(components/audio_example_gen/driver.py) is never computed there and a changed data folder under
the same path would be a cache hit on yesterday's Examples. The ExampleGen's task is therefore
compiled with caching off. The price: its new Examples artifact is a new input for every step
after it, so each run recomputes all of them. --cache_example_gen turns the cache back on for a
data folder that never changes in place (a dated snapshot path, say).

The baseline there is the latest blessed model (BlessingConfig LATEST, BLESSING): Kubeflow V2
compiles TFX's built-in Resolver strategies only, not the best-blessed-model one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline import config as config_lib
from pipeline import logs
from pipeline import saved_model_layout as layout

# The project's image as the Dockerfile builds it (`docker build -t fat-audio-pipeline:0.1.0 .`);
# push it to a registry the cluster can pull from and pass that name with --image.
DEFAULT_IMAGE = "fat-audio-pipeline:0.1.0"
BLESSING = config_lib.BlessingConfig(baseline=config_lib.BlessingConfig.LATEST)


EXAMPLE_GEN_TASK = "AudioExampleGen"


def compile_pipeline(pipeline, output_path: str, image: str = DEFAULT_IMAGE, cache_example_gen: bool = False) -> str:
    """Write the KFP V2 pipeline spec of a `tfx.dsl.Pipeline` to `output_path`; returns the path.
    Unless `cache_example_gen`, the ExampleGen's task has caching off (see the module's doc)."""
    from tfx import v1 as tfx

    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_path)), output_filename=os.path.basename(output_path))
    try:
        runner.run(pipeline, write_out=True)
    except TypeError as e:
        if "resolver policy" not in str(e):
            raise
        raise ValueError("Kubeflow V2 compiles only TFX's built-in Resolver strategies: build the pipeline "
                         "with BlessingConfig(baseline=LATEST) (kubeflow.BLESSING)") from e
    if not cache_example_gen:
        with open(output_path) as f:
            job = json.load(f)
        task = job["pipelineSpec"]["root"]["dag"]["tasks"][EXAMPLE_GEN_TASK]
        task["cachingOptions"] = {"enableCache": False}
        with open(output_path, "w") as f:
            json.dump(job, f, indent=2, sort_keys=True)
    return output_path


def main(argv: list[str] | None = None) -> None:
    from pipeline.orchestration import tfx_pipeline

    logs.quiet_tensorflow()
    ap = argparse.ArgumentParser(prog="fatp-kubeflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--pipeline_root", required=True)
    ap.add_argument("--serving_root", required=True)
    ap.add_argument("--pipeline_name", default=tfx_pipeline.PIPELINE_NAME)
    ap.add_argument("--model_name", default=layout.MODEL_NAME)
    ap.add_argument("--image", default=DEFAULT_IMAGE, help="container image every step runs in")
    ap.add_argument("--feature_preset", choices=sorted(config_lib.PRESETS), default="seed")
    ap.add_argument("--trainer_preset", choices=sorted(config_lib.TRAINER_PRESETS), default="default")
    ap.add_argument("--output", default="pipeline.json")
    ap.add_argument("--cache_example_gen", action="store_true",
                    help="let Kubeflow cache the ExampleGen: only for a data folder that never changes in place "
                         "(Kubeflow does not run the driver that fingerprints the data)")
    args, beam_args = ap.parse_known_args(argv)
    eg = config_lib.AudioExampleGenConfig()
    eg.features.CopyFrom(config_lib.feature_config(args.feature_preset))
    pipeline = tfx_pipeline.create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root, data_dir=args.data_dir,
        serving_root=args.serving_root, model_name=args.model_name, example_gen_config=eg,
        trainer_preset=args.trainer_preset, blessing=BLESSING, metadata_connection_config=None,
        # on a cluster the Beam steps should run on a distributed runner, e.g. --runner=DataflowRunner
        beam_pipeline_args=beam_args or None)
    if not args.cache_example_gen:
        print("note: Kubeflow V2 does not run the ExampleGen's driver, which fingerprints the data folder, so "
              "changed data there would not be a cache miss: the ExampleGen is compiled with caching off "
              "(--cache_example_gen turns it on)", file=sys.stderr)
    print(compile_pipeline(pipeline, args.output, args.image, args.cache_example_gen))


if __name__ == "__main__":
    sys.exit(main())
