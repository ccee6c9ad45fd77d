"""How the project's commands start logging: one format, and TensorFlow's C++ start-up lines kept
off the terminal unless asked for.

TF 2.21 writes its start-up notices through absl before absl's logging is initialized, straight to
the process's stderr, whatever TF_CPP_MIN_LOG_LEVEL says: the oneDNN notice, "Could not find cuda
drivers", the CPU-instructions notice, and on machines without a GPU an E-level "failed call to
cuInit" that reads like a failure. The console scripts (their entry points are here, so this runs
before anything imports TensorFlow) pass the process's stderr through a small filter process that
drops exactly those lines (cuInit's only where the machine has no NVIDIA device) and forwards every
other line, errors included; worker processes inherit it. `--log_level DEBUG` or an explicit
TF_CPP_MIN_LOG_LEVEL=0 shows everything.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import re
import subprocess
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_tensorflow() -> None:
    """TensorFlow's C++ INFO and WARNING lines (oneDNN notices, CUDA probing) stay hidden; errors show.
    A TF_CPP_MIN_LOG_LEVEL the user set wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup(level: str | int = "INFO") -> None:
    """A command's logging: `level` for the root logger, on stderr, in FORMAT. A library that ran
    logging.basicConfig() at import (one among TFX's does: its lines read "WARNING:absl:...") has
    its handler reformatted, not a second one added; other handlers (a test's capture) are kept."""
    quiet_tensorflow()
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    formatter = logging.Formatter(FORMAT)
    defaults = [h for h in root.handlers if type(h) is logging.StreamHandler
                and (h.formatter is None or h.formatter._fmt == logging.BASIC_FORMAT)]
    for handler in defaults:
        handler.setFormatter(formatter)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)


# the start-up lines dropped: "I0000 00:00:1796062215.572405   23303 port.cc:153] oneDNN ..."
_NATIVE = r"[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ (?:port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
NOISE = re.compile(rf"^(?:{_NATIVE}.*"
                   r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                   r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$")
NO_GPU_NOISE = re.compile(r"^E\d{4} \d\d:\d\d:[\d.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")

_FILTER = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C stops the command; the filter drains to EOF
noise = [re.compile(p) for p in sys.argv[1:]]
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not any(p.match(line.decode("utf-8", "replace").rstrip("\\n")) for p in noise):
        out.write(line)
        out.flush()
"""


def _wants_native_logs(argv: list[str]) -> bool:
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return True
    flags = " ".join(argv).replace("=", " ").split()
    return any(a == "--log_level" and b.upper() == "DEBUG" for a, b in zip(flags, flags[1:]))


def filter_native_stderr(argv: list[str]) -> None:
    """Route this process's stderr (fd 2) through a filter process that drops TensorFlow's start-up
    notices (NOISE; NO_GPU_NOISE too on a machine without /dev/nvidiactl), unless `argv` asks for
    --log_level DEBUG. At exit stderr is restored and the filter drained. Call before TensorFlow loads."""
    if _wants_native_logs(argv):
        return
    patterns = [NOISE.pattern] + ([] if os.path.exists("/dev/nvidiactl") else [NO_GPU_NOISE.pattern])
    sys.stderr.flush()
    original = os.dup(2)
    proc = subprocess.Popen([sys.executable, "-c", _FILTER, *patterns], stdin=subprocess.PIPE, stdout=original,
                            close_fds=True)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()
    # Python's own writes (logging, tracebacks) go straight to the terminal, in order with stdout;
    # only what writes to fd 2 natively (TensorFlow's C++, worker processes) passes the filter.
    python_stderr, sys.stderr = sys.stderr, os.fdopen(os.dup(original), "w", buffering=1,
                                                      encoding=sys.stderr.encoding, errors="backslashreplace")

    def restore():
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(original, 2)            # closes this process's end of the pipe
        try:
            proc.wait(timeout=5)        # the filter ends once the last writer (workers too) has closed
        except subprocess.TimeoutExpired:
            pass

    atexit.register(restore)


def command(target: str):
    """A console script's entry point: the stderr filter first, then "module:function"."""
    def run():
        quiet_tensorflow()
        filter_native_stderr(sys.argv[1:])
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)()
    return run


# console scripts (setup.py)
train = command("pipeline.training.train:main")
predict = command("pipeline.serving.predict:main")
batch_predict = command("pipeline.serving.batch_predict:main")
run_pipeline = command("pipeline.orchestration.run_local:main")
kubeflow = command("pipeline.orchestration.kubeflow:main")
report = command("pipeline.orchestration.report_html:main")
