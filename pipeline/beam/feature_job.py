"""The feature job: the Kaggle layout in, tf.Example TFRecords + dead letters + manifest out.

`build()` wires the transforms into any Beam pipeline (the CLI in beam_runner.py, or a TFX
component's executor); `run()` is the command line: it checks inputs and the output directory
before starting workers, runs the pipeline, then reads the manifest back and exits non-zero when
the job failed (too many bad rows, nothing written).
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.beam import transforms as bt
from pipeline import config as config_lib
from pipeline.data import kaggle_layout
from pipeline.data import job_output as output
from pipeline.data import tfrecord

log = logging.getLogger("fatp.job")

TRACKED_PACKAGES = ("fat-audio-pipeline", "tensorflow", "apache-beam", "tfx", "librosa", "soundfile", "soxr",
                    "numpy", "protobuf")


@dataclass
class JobSpec:
    """Everything the pipeline needs, resolved and validated by the driver."""
    csv_path: str
    audio_dir: str
    output_dir: str
    vocabulary: list[str]
    cfg: config_lib.FeatureConfig
    mode: str = "train"                      # "train": labelled, split train/eval; "test": unlabelled
    eval_ratio: float = 0.1
    max_error_ratio: float = 0.05
    batch_size: int = 8
    intra_op_threads: int = 0
    compression: str = "none"                # shards: none, fast or best (tfrecord.DEFLATE)
    split_prefix: str = ""                   # split folders are PREFIX<split>/ ("Split-" for TFX's Examples)
    inputs: dict = field(default_factory=dict)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _static_manifest(spec: JobSpec) -> dict:
    """What the manifest says that is known before the pipeline runs (plain data: it is pickled)."""
    return {
        "mode": spec.mode,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": spec.inputs,
        "max_error_ratio": spec.max_error_ratio,
        "eval_ratio": spec.eval_ratio if spec.mode == "train" else None,
        "labels": {"file": output.LABELS, "count": len(spec.vocabulary)},
        "dead_letters": output.DEAD_LETTERS,
        "feature_config": config_lib.to_dict(spec.cfg),
        "feature_config_text": config_lib.to_text(spec.cfg),
        "example": {"mel_shape": list(config_lib.mel_shape(spec.cfg)),
                    "compression": "GZIP" if tfrecord.DEFLATE[spec.compression] else "NONE",
                    "deflate": spec.compression},
        "versions": _versions(),
    }


def _write_manifest(_, shards: dict, dead: dict, input_rows: int, static: dict, output_dir: str) -> dict:
    """The last write of a run: counts that reconcile, and the status that readers trust."""
    written = sum(s["records"] for s in shards.values())
    failed = dead["failed"]
    ratio = failed / input_rows if input_rows else 1.0
    status, reason = output.STATUS_COMPLETE, ""
    if input_rows == 0:
        status, reason = "failed", "the CSV has no data rows"
    elif written == 0:
        status, reason = "failed", "no example was written"
    elif ratio > static["max_error_ratio"]:
        status, reason = "failed", (f"{failed} of {input_rows} rows failed (error ratio {ratio:.3f} > "
                                    f"--max_error_ratio {static['max_error_ratio']}); see {output.DEAD_LETTERS}")
    if written + failed != input_rows:  # an invariant of the transforms; never expected
        status, reason = "failed", f"counts do not reconcile: {written} written + {failed} failed != {input_rows} rows"
    manifest = dict(static)
    manifest.update({
        "status": status,
        "status_reason": reason,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {
            "input_rows": input_rows,
            "written": written,
            "failed": failed,
            "per_split": {k: v["records"] for k, v in shards.items()},
            "failed_by_reason": dead["by_reason"],
            "failed_by_stage": dead["by_stage"],
        },
        "error_ratio": ratio,
        "splits": shards,
    })
    output.write_json(output.join(output_dir, output.MANIFEST), manifest)
    return manifest


def build(p: beam.Pipeline, spec: JobSpec) -> beam.PCollection:
    """Add the job to pipeline `p`; returns the PCollection holding the written manifest."""
    vocabulary = spec.vocabulary if spec.mode == "train" else None
    rows = p | "ReadRows" >> bt.ReadRows(spec.csv_path, vocabulary)
    feats = rows["rows"] | "ComputeFeatures" >> bt.ComputeFeatures(
        spec.audio_dir, spec.cfg, spec.batch_size, spec.intra_op_threads)
    shards = feats["mels"] | "WriteExamples" >> bt.WriteExamples(
        spec.output_dir, spec.eval_ratio if spec.mode == "train" else None, spec.compression, spec.split_prefix)
    dead = ((rows[bt.DEAD], feats[bt.DEAD]) | "AllDead" >> beam.Flatten()
            | "WriteDeadLetters" >> bt.WriteDeadLetters(output.join(spec.output_dir, output.DEAD_LETTERS)))
    input_rows = ((rows["rows"], rows[bt.DEAD]) | "AllRows" >> beam.Flatten()
                  | "CountRows" >> beam.combiners.Count.Globally())
    return (p | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(shards),
                                          beam.pvalue.AsSingleton(dead), beam.pvalue.AsSingleton(input_rows),
                                          _static_manifest(spec), spec.output_dir))


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="beam_runner.py",
        description="Decode FAT2019-layout audio, compute normalized log-mels and write tf.Example TFRecords "
                    "(train/eval split by a hash of fname), dead letters and a manifest. Flags this job does "
                    "not know go to Beam's PipelineOptions, e.g. --runner=DirectRunner --direct_num_workers=2 "
                    "--direct_running_mode=multi_processing; --runner=DaskRunner with --dask_client_address=HOST:8786 "
                    "(a dask.distributed scheduler) or --dask_local_workers=N (a local cluster of N processes); "
                    "or DataflowRunner/FlinkRunner/SparkRunner flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data_dir", help="Kaggle layout root: train_curated.csv, train_curated/, "
                                       "sample_submission.csv, test/ (local path, gs:// or s3://)")
    ap.add_argument("--output_dir", required=True, help="where TFRecords, labels.txt, dead_letters.jsonl and "
                                                        "manifest.json go")
    ap.add_argument("--mode", choices=["train", "test"], default="train",
                    help="train: labelled rows of --csv split into train/eval; test: unlabelled clips listed in "
                         "sample_submission.csv into a single 'test' split")
    ap.add_argument("--csv", help="rows to read (default: DATA/train_curated.csv, or DATA/sample_submission.csv "
                                  "in test mode)")
    ap.add_argument("--audio_dir", help="folder of the clips (default: DATA/train_curated or DATA/test)")
    ap.add_argument("--labels", help="label order: sample_submission.csv (its header) or labels.txt "
                                     "(default: DATA/sample_submission.csv)")
    ap.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="seed",
                    help="feature parameters: 'seed' = the Kaggle kernel's (636x128), 'small' = fast demo/tests")
    ap.add_argument("--feature_config", help="a FeatureConfig text proto merged over --preset")
    ap.add_argument("--eval_ratio", type=float, default=0.1, help="share of clips in the eval split")
    ap.add_argument("--max_error_ratio", type=float, default=0.05,
                    help="fail the job (exit 1) when more than this share of rows are dead letters")
    ap.add_argument("--batch_size", type=int, default=8, help="clips per call of the feature function")
    ap.add_argument("--compression", choices=tfrecord.CHOICES, default="none",
                    help="shards: none = plain *.tfrecord (no deflate CPU, ~36%% more bytes than fast); "
                         "fast = GZIP with Huffman coding only (~2.7 ms an example); best = GZIP at zlib level 6 "
                         "(~2.8x fast's CPU for ~12%% fewer bytes); small = best. See bench/README.md")
    ap.add_argument("--tf_threads", type=int, default=0,
                    help="TensorFlow intra/inter-op threads per worker (0: TensorFlow's default)")
    ap.add_argument("--overwrite", action="store_true", help="replace whatever is in --output_dir")
    ap.add_argument("--log_level", default="INFO")
    return ap


def make_spec(*, output_dir: str, cfg: config_lib.FeatureConfig, data_dir: str | None = None, mode: str = "train",
              csv: str | None = None, audio_dir: str | None = None, labels: str | None = None,
              eval_ratio: float = 0.1, max_error_ratio: float = 0.05, batch_size: int = 8,
              intra_op_threads: int = 0, compression: str = "none", split_prefix: str = "",
              inputs: dict | None = None) -> JobSpec:
    """A checked JobSpec: paths default to the Kaggle layout under `data_dir`, the label vocabulary
    is read and the CSV's header checked here, in the driver, so a wrong file fails before any
    worker starts (bad rows later become dead letters). Raises ValueError saying what is wrong.
    The command line and the TFX component (components/audio_example_gen) both build their spec here."""
    def default(value, name, rel):
        if value:
            return value
        if not data_dir:
            raise ValueError(f"give --data_dir or --{name}")
        return output.join(data_dir, rel)

    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if not 0.0 <= eval_ratio < 1.0:
        raise ValueError("--eval_ratio must be in [0, 1)")
    if not 0.0 <= max_error_ratio <= 1.0:
        raise ValueError("--max_error_ratio must be in [0, 1]")
    if batch_size < 1:
        raise ValueError("--batch_size must be >= 1")
    if compression not in tfrecord.CHOICES:
        raise ValueError(f"compression must be one of {tfrecord.CHOICES}, got {compression!r}")
    compression = tfrecord.canonical(compression)
    test = mode == "test"
    csv_path = default(csv, "csv", "sample_submission.csv" if test else "train_curated.csv")
    audio_path = default(audio_dir, "audio_dir", "test" if test else "train_curated")
    labels_path = default(labels, "labels", "sample_submission.csv")
    try:
        vocabulary = kaggle_layout.load_vocabulary(labels_path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"label vocabulary: {e}") from None
    from apache_beam.io.filesystems import FileSystems
    for what, path in (("--csv", csv_path), ("--audio_dir", audio_path)):
        if not FileSystems.exists(path):
            raise ValueError(f"{what} {path} does not exist")
    try:
        header = output.read_text(csv_path).splitlines()[:1]
        kaggle_layout.parse_rows("\n".join(header), None if test else vocabulary)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--csv {csv_path}: {e}") from None
    return JobSpec(csv_path=csv_path, audio_dir=audio_path, output_dir=output_dir, vocabulary=vocabulary, cfg=cfg,
                   mode=mode, eval_ratio=eval_ratio, max_error_ratio=max_error_ratio, batch_size=batch_size,
                   intra_op_threads=intra_op_threads, compression=compression, split_prefix=split_prefix,
                   inputs={"csv": csv_path, "audio_dir": audio_path, "labels": labels_path,
                           **({"data_dir": data_dir} if data_dir else {}), **(inputs or {})})


def _resolve(args: argparse.Namespace) -> JobSpec:
    cfg = (config_lib.load_text(args.feature_config, args.preset) if args.feature_config
           else config_lib.feature_config(args.preset))
    try:
        return make_spec(output_dir=args.output_dir, cfg=cfg, data_dir=args.data_dir, mode=args.mode, csv=args.csv,
                         audio_dir=args.audio_dir, labels=args.labels, eval_ratio=args.eval_ratio,
                         max_error_ratio=args.max_error_ratio, batch_size=args.batch_size,
                         intra_op_threads=args.tf_threads, compression=args.compression,
                         inputs={"preset": args.preset, "feature_config": args.feature_config})
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def start(spec: JobSpec, overwrite: bool) -> None:
    """Prepare the output directory (output.prepare: refuses a used one unless `overwrite`) and
    write the label vocabulary, before the pipeline runs."""
    inputs = [spec.csv_path, spec.audio_dir, spec.inputs.get("labels"), spec.inputs.get("data_dir")]
    output.prepare(spec.output_dir, overwrite, inputs=[p for p in inputs if p])
    output.write_text(output.join(spec.output_dir, output.LABELS), "\n".join(spec.vocabulary) + "\n")


# names that select the project's DaskRunner (pipeline/beam/dask_runner.py): Beam's own DaskRunner loses
# tagged outputs and finish_bundle outputs, among other faults this job cannot run with
_DASK_RUNNER_NAMES = {"dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner"}


# Beam's DirectRunner: on a batch job like this one it runs FnApiRunner, but Beam 2.77 first tries
# to download its Prism runner from GitHub and, where that works, runs the job there, where
# --direct_num_workers / --direct_running_mode mean nothing. The job names FnApiRunner itself, so
# `--runner=DirectRunner` runs the same engine with the same parallelism on every machine
# (`--runner=PrismRunner` asks for Prism).
_DIRECT_RUNNER_NAMES = {"directrunner", "apache_beam.runners.direct.direct_runner.directrunner"}
LOCAL_RUNNER = "FnApiRunner"
# Beam's local Python runners, which take --direct_num_workers / --direct_running_mode
_LOCAL_RUNNER_NAMES = {"fnapirunner", "apache_beam.runners.portability.fn_api_runner.fn_runner.fnapirunner"}
# Up to this many local workers run as threads of one process (bench/README.md, issue 9: on 2 cores,
# threads were faster than worker processes in 5 of 6 same-run comparisons, at half the memory and
# with one start-up); more run as processes, which the GIL does not cap.
MAX_THREAD_WORKERS = 2


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_parallelism(beam_args: list[str], cores: int | None = None) -> list[str]:
    """The flags a local runner gets for what the user left unset: one worker per usable core, as
    threads of one process up to MAX_THREAD_WORKERS workers, else as processes."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--direct_num_workers", type=int)
    ap.add_argument("--direct_running_mode")
    given, _ = ap.parse_known_args(beam_args)
    cores = cores or usable_cores()
    out = []
    if given.direct_num_workers is None:
        out.append(f"--direct_num_workers={cores}")
    if given.direct_running_mode is None:
        workers = given.direct_num_workers or cores          # Beam: 0 workers means one per core
        out.append(f"--direct_running_mode={'multi_threading' if workers <= MAX_THREAD_WORKERS else 'multi_processing'}")
    return out


def _runner_flags(beam_args: list[str]) -> list[str]:
    """The local runner (FnApiRunner) unless another runner is given; --runner=DirectRunner runs it too
    (see _DIRECT_RUNNER_NAMES). --runner=DaskRunner (also `--runner DaskRunner`, or Beam's full class
    path) selects pipeline.beam.dask_runner.DaskRunner. The local runner gets local_parallelism() for the
    flags it was not given."""
    out, i, named = [], 0, False
    while i < len(beam_args):
        arg = beam_args[i]
        if arg == "--runner" and i + 1 < len(beam_args):
            arg, i = f"--runner={beam_args[i + 1]}", i + 1
        if arg.startswith("--runner="):
            named = True
            name = arg.split("=", 1)[1].strip().lower()
            if name in _DASK_RUNNER_NAMES:
                from pipeline.beam import dask_runner  # noqa: F401 -- registers --dask_local_workers with Beam's options
                log.info("runner: %s (Beam's DaskRunner with fixes, see BUILD_NOTES.md)", dask_runner.RUNNER_PATH)
                arg = f"--runner={dask_runner.RUNNER_PATH}"
            elif name in _DIRECT_RUNNER_NAMES:
                log.info("runner: %s, the engine Beam's DirectRunner runs this batch job on, without its attempt "
                         "to download and start Prism first (--runner=PrismRunner runs Prism)", LOCAL_RUNNER)
                arg = f"--runner={LOCAL_RUNNER}"
        out.append(arg)
        i += 1
    if not named:
        out.insert(0, f"--runner={LOCAL_RUNNER}")
    runner = next(a for a in out if a.startswith("--runner=")).split("=", 1)[1].strip().lower()
    if runner in _LOCAL_RUNNER_NAMES:
        extra = local_parallelism(out)
        if extra:
            log.info("local runner: %s (--direct_num_workers / --direct_running_mode choose otherwise)",
                     " ".join(extra))
        out += extra
    return out


def _pipeline_options(beam_args: list[str]) -> PipelineOptions:
    return PipelineOptions(_runner_flags(beam_args))


def _summary(manifest: dict, seconds: float) -> str:
    c = manifest["counts"]
    splits = ", ".join(f"{k} {v}" for k, v in sorted(c["per_split"].items())) or "none"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["failed_by_reason"].items())) or "none"
    return (f"{c['input_rows']} rows -> {c['written']} examples ({splits}), {c['failed']} dead letters "
            f"({reasons}) in {seconds:.1f} s ({c['written'] / max(seconds, 1e-9):.1f} clips/s)")


class _WorkerLogFilter(logging.Filter):
    """DirectRunner's multi_processing mode relays every log line of its workers (gRPC channels,
    harness start-up...) at INFO, each as the text of its LogEntry proto. Keep this project's lines
    and the workers' errors, and show each as its message and where it was logged."""

    _FIELD = {name: re.compile(name + r': "((?:[^"\\]|\\.)*)"') for name in ("message", "log_location")}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not (record.levelno >= logging.ERROR or "/pipeline/" in text):
            return False
        found = {k: p.search(text) for k, p in self._FIELD.items()}
        if found["message"]:
            from google.protobuf import text_encoding

            msg = text_encoding.CUnescape(found["message"].group(1)).decode("utf-8", "replace")
            where = found["log_location"] and os.path.basename(found["log_location"].group(1))
            record.msg, record.args = f"worker: {msg}" + (f" ({where})" if where else ""), ()
        return True


# INFO lines a user of the job has no use for (kept at --log_level DEBUG): SDK harness threads
# (multi_threading mode) announcing their start and stop, and Beam reading our DoFns' postponed
# annotations (`from __future__ import annotations`) as Any, once per transform.
_CHATTY_LOGGERS = ("apache_beam.runners.worker", "apache_beam.runners.portability.fn_api_runner.worker_handlers",
                   "apache_beam.typehints.native_type_compatibility")


def run(argv: list[str] | None = None) -> int:
    args, beam_args = arg_parser().parse_known_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("apache_beam.runners.portability.local_job_service").addFilter(_WorkerLogFilter())
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    spec = _resolve(args)
    try:
        start(spec, args.overwrite)
    except output.OutputError as e:
        log.error("%s", e)
        return 2
    log.info("reading %s (%s mode), clips from %s, %d labels, features %s -> %s",
             spec.csv_path, spec.mode, spec.audio_dir, len(spec.vocabulary), args.preset,
             "x".join(map(str, config_lib.mel_shape(spec.cfg))))
    options = _pipeline_options(beam_args)
    if "distributed" in sys.modules and args.log_level.upper() != "DEBUG":
        # dask's scheduler and nannies log every worker's start and stop at INFO, from this process
        logging.getLogger("distributed").setLevel(logging.WARNING)
    t0 = time.time()
    with beam.Pipeline(options=options) as p:
        build(p, spec)
    seconds = time.time() - t0
    manifest = output.read_manifest(spec.output_dir)
    if manifest is None:
        log.error("the pipeline finished without writing %s", output.MANIFEST)
        return 1
    log.info("%s", _summary(manifest, seconds))
    log.info("wrote %s", output.join(spec.output_dir, output.MANIFEST))
    if manifest["status"] != output.STATUS_COMPLETE:
        log.error("job failed: %s", manifest["status_reason"])
        return 1
    return 0


def exit_without_teardown(code: int) -> None:
    """End a command whose outputs are final: atexit handlers run (libraries close what they opened),
    logs and streams are flushed, and the process then exits without Python's teardown of the
    modules and objects of TensorFlow and Beam, which takes 1.0-1.3 s and does nothing a finished
    job needs (bench/README.md, issue 9)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    exit_without_teardown(run())   # an exception or SystemExit from run() leaves the usual way
