"""The feature job's command line (`python beam_runner.py`, `fatp-beam`).

`run()` checks the inputs and the output folder before any worker starts, runs the job on the
runner the flags name (pipeline/beam/runners.py), then reads the manifest back and exits non-zero
when the job failed (too many bad rows, nothing written): 0 done, 1 failed, 2 refused to start.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import time

import apache_beam as beam

from pipeline import config as config_lib
from pipeline import fileio
from pipeline import logs
from pipeline.beam import feature_job, runners
from pipeline.data import job_output as output
from pipeline.data import groups, tfrecord

log = logging.getLogger("fatp.job")


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
                                       "sample_submission.csv, test/, and optionally train_noisy.csv, train_noisy/ "
                                       "(local path, gs:// or s3://)")
    ap.add_argument("--output_dir", required=True, help="where TFRecords, labels.txt, dead_letters.jsonl and "
                                                        "manifest.json go")
    ap.add_argument("--mode", choices=["train", "test"], default="train",
                    help="train: labelled rows of --csv split into train/eval; test: unlabelled clips listed in "
                         "sample_submission.csv into a single 'test' split")
    ap.add_argument("--csv", help="rows to read (default: DATA/train_curated.csv, or DATA/sample_submission.csv "
                                  "in test mode)")
    ap.add_argument("--audio_dir", help="folder of the clips (default: DATA/train_curated or DATA/test)")
    noisy = ap.add_mutually_exclusive_group()
    noisy.add_argument("--noisy", dest="noisy", action="store_const", const=True, default=None,
                       help="require the noisy source (train mode): fail when train_noisy.csv is missing. Without "
                            "--noisy or --no_noisy it is read when DATA/train_noisy.csv exists (or --noisy_csv is given); "
                            "its clips all go to the train split and their Examples say source 'noisy'")
    noisy.add_argument("--no_noisy", dest="noisy", action="store_const", const=False,
                       help="leave the noisy source out: the curated clips only, Examples exactly as without it")
    ap.add_argument("--noisy_csv", help="the noisy source's rows (default: DATA/train_noisy.csv)")
    ap.add_argument("--noisy_audio_dir", help="the noisy source's clips (default: DATA/train_noisy)")
    ap.add_argument("--labels", help="label order: sample_submission.csv (its header) or labels.txt "
                                     "(default: DATA/sample_submission.csv)")
    ap.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="seed",
                    help="feature parameters: 'seed' = the Kaggle kernel's (636x128), 'small' = fast demo/tests")
    ap.add_argument("--feature_config", help="a FeatureConfig text proto merged over --preset")
    ap.add_argument("--eval_ratio", type=float, default=0.1, help="share of clips in the eval split")
    groups.add_flags(ap, default="")
    ap.add_argument("--max_error_ratio", type=float, default=0.05,
                    help="fail the job (exit 1) when more than this share of rows are dead letters")
    ap.add_argument("--batch_size", type=int, default=8, help="clips per call of the feature function")
    ap.add_argument("--compression", choices=tfrecord.CHOICES, default="none",
                    help="shards: none = plain *.tfrecord (no deflate CPU, ~36%% more bytes than fast); "
                         "fast = GZIP with Huffman coding only (~2.7 ms an example); best = GZIP at zlib level 6 "
                         "(~2.8x fast's CPU for ~12%% fewer bytes); small = best. See bench/README.md")
    ap.add_argument("--tf_threads", type=int, default=0,
                    help="TensorFlow intra/inter-op threads per worker process (0: TensorFlow's default); "
                         "a worker thread of a process where TensorFlow already runs cannot change it, and says so")
    ap.add_argument("--overwrite", action="store_true", help="replace whatever is in --output_dir")
    ap.add_argument("--log_level", default="INFO")
    return ap


def _resolve(args: argparse.Namespace) -> feature_job.JobSpec:
    cfg = (config_lib.load_text(args.feature_config, args.preset) if args.feature_config
           else config_lib.feature_config(args.preset))
    try:
        return feature_job.make_spec(output_dir=args.output_dir, cfg=cfg, data_dir=args.data_dir, mode=args.mode,
                                     csv=args.csv, audio_dir=args.audio_dir, labels=args.labels,
                                     eval_ratio=args.eval_ratio, max_error_ratio=args.max_error_ratio,
                                     batch_size=args.batch_size, intra_op_threads=args.tf_threads,
                                     compression=args.compression, noisy=args.noisy, noisy_csv=args.noisy_csv,
                                     noisy_audio_dir=args.noisy_audio_dir, group_regex=args.group_regex,
                                     group_column=args.group_column, group_csv=args.group_csv,
                                     inputs={"preset": args.preset, "feature_config": args.feature_config})
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _summary(manifest: dict, seconds: float) -> str:
    c = manifest["counts"]
    splits = ", ".join(f"{k} {v}" for k, v in sorted(c["per_split"].items())) or "none"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["failed_by_reason"].items())) or "none"
    sources = c.get("per_source") or {}
    by_source = ("; " + ", ".join(f"{k}: {v['input_rows']} rows -> {v['written']} examples, {v['failed']} dead letters"
                                  for k, v in sources.items())) if len(sources) > 1 else ""
    return (f"{c['input_rows']} rows -> {c['written']} examples ({splits}), {c['failed']} dead letters "
            f"({reasons}){by_source} in {seconds:.1f} s ({c['written'] / max(seconds, 1e-9):.1f} clips/s)")


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
                   "apache_beam.typehints.native_type_compatibility",
                   "apache_beam.transforms.util")      # BatchElements' timing statistics


def run(argv: list[str] | None = None) -> int:
    args, beam_args = arg_parser().parse_known_args(argv)
    logs.setup(args.log_level)
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("apache_beam.runners.portability.local_job_service").addFilter(_WorkerLogFilter())
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    spec = _resolve(args)
    try:
        feature_job.start(spec, args.overwrite)
    except output.OutputError as e:
        log.error("%s", e)
        return 2
    log.info("reading %s (%s mode), clips from %s, %d labels, features %s -> %s",
             spec.csv_path, spec.mode, spec.audio_dir, len(spec.vocabulary), args.preset,
             "x".join(map(str, config_lib.mel_shape(spec.cfg))))
    if spec.noisy_csv:
        log.info("and the noisy source: %s, clips from %s (all to the train split)", spec.noisy_csv,
                 spec.noisy_audio_dir)
    options = runners.pipeline_options(beam_args)
    if "distributed" in sys.modules and args.log_level.upper() != "DEBUG":
        # dask's scheduler and nannies log every worker's start and stop at INFO, from this process
        logging.getLogger("distributed").setLevel(logging.WARNING)
    t0 = time.time()
    with beam.Pipeline(options=options) as p:
        feature_job.build(p, spec)
    seconds = time.time() - t0
    manifest = output.read_manifest(spec.output_dir)
    if manifest is None:
        log.error("the pipeline finished without writing %s", output.MANIFEST)
        return 1
    log.info("%s", _summary(manifest, seconds))
    log.info("wrote %s", fileio.join(spec.output_dir, output.MANIFEST))
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
    logs.quiet_tensorflow()
    exit_without_teardown(run())   # an exception or SystemExit from run() leaves the usual way
