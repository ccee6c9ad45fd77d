"""Which Beam runner a job runs on, and with how many local workers: the one place that decides
it, for the feature job's command line and for every Beam component of the TFX pipeline.

    runner_flags([])                          -> --runner=FnApiRunner --direct_num_workers=<cores> ...
    runner_flags(["--runner=DirectRunner"])   -> the same (see below why not DirectRunner itself)
    runner_flags(["--runner=DaskRunner"])     -> --runner=pipeline.beam.dask_runner.DaskRunner
"""
from __future__ import annotations

import argparse
import logging
import os

from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger("fatp.runners")

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


def runner_flags(beam_args: list[str]) -> list[str]:
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


def is_local(beam_args: list[str]) -> bool:
    """Whether these flags (after runner_flags) run on Beam's local runner (FnApiRunner)."""
    runner = next(a for a in runner_flags(beam_args) if a.startswith("--runner=")).split("=", 1)[1].strip()
    return runner.lower() in _LOCAL_RUNNER_NAMES


def ships_no_packages(beam_args: list[str]) -> bool:
    """Whether the runner these flags (after runner_flags) name runs its workers from this Python
    environment, so nothing has to be staged for them: Beam's local runner (in memory, on threads or
    on worker processes started with this interpreter) and the project's DaskRunner (Beam's Dask
    translation ships no packages; a remote Dask cluster's workers need the project installed)."""
    runner = next(a for a in runner_flags(beam_args) if a.startswith("--runner=")).split("=", 1)[1].strip()
    if runner.lower() in _LOCAL_RUNNER_NAMES:
        return True
    from pipeline.beam import dask_runner   # runner_flags imported it already where Dask was named
    return runner == dask_runner.RUNNER_PATH


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    return PipelineOptions(runner_flags(beam_args))


def in_one_process(options: PipelineOptions) -> bool:
    """Whether a pipeline with these options runs all its work in this process (Beam's local runner
    in memory or on threads): then a counter in the process counts the whole job."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = (options.view_as(StandardOptions).runner or LOCAL_RUNNER)
    runner = runner if isinstance(runner, str) else type(runner).__name__
    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return runner.lower() in _LOCAL_RUNNER_NAMES | {"directrunner"} and mode in ("in_memory", "multi_threading")
