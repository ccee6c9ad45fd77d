"""pipeline/logs.py: TensorFlow's native start-up notices kept off a command's terminal, real
errors kept, everything shown when asked for; through a real process, as a console script runs."""
import os
import subprocess
import sys

import pytest

from tests import REPO

SCRIPT = """
import sys
from pipeline import logs
logs.filter_native_stderr(sys.argv[1:])
import tensorflow as tf
tf.constant(1.0) + 1.0                       # initializes the devices: the cuInit probe
print("E1130 12:00:00.000000 1 kernel.cc:1] a real native error", file=sys.stderr)
print("a Python error line", file=sys.stderr)
"""
NOTICES = ("oneDNN custom operations", "Could not find cuda drivers", "InitializeLog", "cuInit")


def _stderr(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.slow
def test_tensorflow_start_up_notices_are_dropped_and_errors_kept():
    unfiltered = _stderr("--log_level", "DEBUG")          # asked for: everything, as before
    assert "oneDNN custom operations" in unfiltered       # the notices exist on this machine: not vacuous
    err = _stderr("--log_level=INFO")
    assert not [n for n in NOTICES if n in err], err
    assert "a real native error" in err and "a Python error line" in err


def test_the_patterns_match_the_notices_and_nothing_like_an_error():
    from pipeline import logs

    assert logs.NOISE.match("I0000 00:00:1796062215.572405   23303 port.cc:153] oneDNN custom operations are on.")
    assert logs.NO_GPU_NOISE.match("E0000 00:00:1796062221.166648   23303 cuda_platform.cc:52] failed call to "
                                   "cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    for line in ("E0000 00:00:1796062221.166648   23303 port.cc:153] something failed",
                 "W0000 00:00:1796062221.166648   23303 cuda_platform.cc:52] failed call to cuInit",
                 "2026-11-30 12:00:00 ERROR fatp.job: port.cc:153] not a native line"):
        assert not (logs.NOISE.match(line) or logs.NO_GPU_NOISE.match(line)), line
